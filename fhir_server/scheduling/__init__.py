"""The scheduling domain: clinic configuration, availability, rules and booking.

Nothing here imports a web framework.
"""

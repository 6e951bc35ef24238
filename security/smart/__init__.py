"""SMART App Launch 2 and Backend Services: client and user registry, tokens, the OAuth 2
endpoints (authlib underneath, adapted here) and the principal every request acts as."""

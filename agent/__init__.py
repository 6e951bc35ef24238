"""The booking agent: patients book, cancel and move appointments by SMS and web chat."""

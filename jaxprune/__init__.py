"""jaxprune."""

"""HTTP routes: each translates a request into one call on the services and the result back."""

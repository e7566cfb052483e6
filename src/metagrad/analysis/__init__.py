"""Statistics and closed-form analyses."""

"""Tables and plots from run records and sensitivity tables."""

"""Feature norm/direction statistics, result tables over seeds, and plots."""

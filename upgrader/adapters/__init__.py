"""The only modules that touch the cluster or run helm. They act and report; they never decide."""

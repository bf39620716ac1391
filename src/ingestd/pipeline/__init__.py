"""What happens to a master after upload: the graphs of work orders and their steps."""

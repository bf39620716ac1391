"""Domain vocabulary: statuses and their allowed transitions."""

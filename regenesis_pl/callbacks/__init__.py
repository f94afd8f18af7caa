"""Lightning callbacks: engine ownership, evaluation, export."""

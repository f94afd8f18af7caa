"""``regenesis study``: every method on the same budget over seeds, compared with intervals."""

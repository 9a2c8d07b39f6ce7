"""Comparing runs (python -m common.compare): run folders are read (runs), grouped into rows of
seeds (rows), printed as tables (tables), fitted as factorial designs (designs, factorial) and
drawn (figures); stats holds the intervals and tests, reference the report's figures.
Nothing here imports common.plans: a comparison reads run folders, not plans."""

"""Documents → instruction pairs: clean, scrub, segment, build pairs, split by document, check
leakage."""

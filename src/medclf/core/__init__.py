"""What every layer above shares and that depends on no model: reading and validating tables, task types
(single- and multi-label), metrics and bootstrap intervals, temperature-scaling maths, the TF-IDF baseline."""

"""Linear probes per layer with a control task (selectivity), and the labelled datasets they train on."""

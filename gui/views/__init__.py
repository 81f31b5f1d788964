"""Views that show data and hold no workflow logic: heatmap, masks, OWL, log, samples, plots."""

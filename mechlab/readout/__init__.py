"""Reading the residual stream and the heads directly: the logit lens, direct logit attribution per
layer and head, and attention-pattern views (offline HTML and static heatmaps)."""

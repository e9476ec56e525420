"""Feature analysis: SAE-feature interventions, statistics, visualisation, interpretability."""

"""Evaluating SAEs: reconstruction, reconstruction in the loop, transfer across steps and models."""

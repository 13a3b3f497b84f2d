"""Maintainer tools: reproductions, studies and checks run from the repository root."""

"""The second release's guards: each a sans-IO module the pipeline calls at its place in the check order."""

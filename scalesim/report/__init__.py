"""Reports of runs: the console summary, plots (matplotlib), the HTML report and a Markdown summary."""

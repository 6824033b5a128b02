"""Label Studio, connected live: ``cdul label-studio-backend`` (its ML backend protocol)
serving a run's labels and storing reviewers' annotations in the run."""

"""`sjc batch`: the job file and options (`jobs`), the runs as Ray tasks (`runner`), the summaries (`report`)."""

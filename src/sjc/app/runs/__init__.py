"""Run folders and their lifecycle: `generate` builds the prior, runs the fit with logs, validation renders and
checkpoints (`checkpoint`), resumes (`restore`), stops cleanly (`interrupt`), keeps one writer per folder
(`runlock`), and reads reference pictures (`picture`)."""

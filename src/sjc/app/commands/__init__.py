"""The `sjc` command (`cli`) and what its commands do besides `generate`: `sjc render` / `sjc export`
(`render_export`), `sjc canvas` / `sjc sample` (`run2d`), `sjc train-prior` (`train_prior`)."""

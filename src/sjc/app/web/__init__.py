"""`sjc serve`: the web page (`page`, gradio) and its runs without the page (`jobs`)."""

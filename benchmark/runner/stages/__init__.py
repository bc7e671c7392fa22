"""The stages the executor runs: build (configs -> objects), train, attack (craft and cells), score."""

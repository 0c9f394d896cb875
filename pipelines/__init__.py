"""The Kubeflow pipeline(s): the DAG, compile, run locally."""

"""The native GenAI service (phase 8): a cloud registry of signed compact models, and an edge
service whose toolbox answers generation requests and fetches a missing task's model once."""

"""The REST API's parts: request and response models, access control, serving."""

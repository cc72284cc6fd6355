"""AWS HealthImaging: a data store of image sets, followed through boto3."""

"""The FHIR R4 read surface (aiohttp): routes, OperationOutcome, conditional reads."""

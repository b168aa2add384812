"""The data contract: names in `contract.py`, curated TFDV schemas in `<dataset>/schema.pbtxt`."""

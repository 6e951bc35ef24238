"""HL7 v2 SIU over MLLP, both ways (issue 6). So far: the MLLP transport (``mllp.py``)."""

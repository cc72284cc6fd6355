"""A PACS over classic DICOM networking (DIMSE): C-ECHO, C-FIND, and a C-STORE listener."""

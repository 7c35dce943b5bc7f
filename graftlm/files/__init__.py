"""Uploaded files (service: graftlm.files.service)."""

from graftlm.files.service import (PURPOSES, create_file, delete_file, file_path, file_to_dict,  # noqa: F401
                                   finish_unfinished_files, get_file, get_file_record, iter_content, list_files,
                                   mark_processed, unfinished_file_ids, upload_local,
                                   validate_stored_file)

"""What the user wrote: YAML lookup and one-line validation errors (:mod:`.files`), the study schema
(:mod:`.schema`), layout files (:mod:`.layout_files`) and teachers (:mod:`.teachers`). No module here imports torch
at import time."""

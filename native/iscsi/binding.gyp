{
  "targets": [
    {
      "target_name": "cinderfs_iscsi",
      "sources": ["iscsi.c"],
      "include_dirs": ["../common"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "libraries": ["-liscsi"]
    }
  ]
}

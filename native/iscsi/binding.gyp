{
  "targets": [
    {
      "target_name": "cinderfs_iscsi",
      "sources": ["iscsi.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "libraries": ["-liscsi"]
    }
  ]
}

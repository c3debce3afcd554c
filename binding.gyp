{
  "targets": [
    {
      "target_name": "remus_native",
      "sources": [
        "native/addon.cc",
        "native/codec/crc32c.cc",
        "native/codec/delta_batch.cc",
        "native/codec/large_buffer.cc",
        "native/codec/lz4_pages.cc",
        "native/codec/page_delta.cc",
        "native/codec/shadow_cache.cc",
        "native/core/caps.cc",
        "native/core/errors.cc",
        "native/core/proc.cc",
        "native/core/sched.cc",
        "native/core/uffd.cc",
        "native/dirty/backend.cc",
        "native/dirty/hash_backend.cc",
        "native/dirty/pagemap.cc",
        "native/dirty/soft_dirty_backend.cc",
        "native/dirty/uffd_wp_backend.cc",
        "native/freeze/freezer.cc",
        "native/freeze/registers.cc",
        "native/freeze/remote_syscall.cc",
        "native/js/codec_bench_js.cc",
        "native/js/codec_js.cc",
        "native/js/delta_codec_js.cc",
        "native/js/convert.cc",
        "native/js/tracer_thread.cc",
        "native/js/tracker_wrap.cc",
        "native/memory/buffer_pool.cc",
        "native/memory/page_reader.cc",
        "native/memory/ranges.cc",
        "native/process/children.cc",
        "native/process/placeholders.cc",
        "native/process/spawn.cc",
        "native/tracker/tracker.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
      "libraries": ["-llz4"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags_cc": ["-std=gnu++20", "-fexceptions", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "replicate-keeper",
      "type": "executable",
      "sources": ["native/tools/keeper.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}

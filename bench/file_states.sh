# Sourced by the benchmarks: put a model file into one of the states it can reach the page cache in.
#   file_state STATE FILE
#   written  the file as a writer leaves it (a fresh copy: convert, quantize and downloads write it
#            the same way): the page cache holds it in small pages.
#   cold     not cached (flushed, then dropped with posix_fadvise DONTNEED: no root needed).
#   read     after one sequential read from cold (cat FILE >/dev/null): large pages.
file_state() {
  local state=$1 file=$2
  case $state in
    written) cp "$file" "$file.copy" && mv "$file.copy" "$file" && sync "$file" ;;
    cold) drop_from_page_cache "$file" ;;
    read) drop_from_page_cache "$file" && cat "$file" >/dev/null ;;
    *) echo "file_state: unknown state '$state' (written, cold, read)" >&2; return 1 ;;
  esac
}
drop_from_page_cache() {
  /usr/bin/python3 -c "
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)" "$1"
}

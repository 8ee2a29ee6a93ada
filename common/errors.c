/* The words and names of the GRID_E* codes, from the one list in grid.h. */
#include "grid_types.h"

const char *grid_strerror(int err) {
  switch (err) {
    case 0: return "success";
#define GRID_STRERROR_CASE_(name, code, text) case code: return text;
    GRID_ERRNO_MAP(GRID_STRERROR_CASE_)
#undef GRID_STRERROR_CASE_
    default: return "unknown error";
  }
}

const char *grid_err_name(int err) {
  switch (err) {
    case 0: return "GRID_OK";
#define GRID_ERRNAME_CASE_(name, code, text) case code: return "GRID_" #name;
    GRID_ERRNO_MAP(GRID_ERRNAME_CASE_)
#undef GRID_ERRNAME_CASE_
    default: return "GRID_E?";
  }
}

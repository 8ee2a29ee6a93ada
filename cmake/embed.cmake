# Writes OUT: a C file holding the bytes of IN as NAME[] and NAME_len, so
# gridd serves its dashboard from its own binary (no files to install, no
# CDN). Run by the build: cmake -DIN=... -DOUT=... -DNAME=... -P embed.cmake
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" digits)
math(EXPR len "${digits} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x..,){32})" "\\1\n" bytes "${bytes}")
get_filename_component(from "${IN}" NAME)
file(WRITE "${OUT}" "/* Generated from ${from} by cmake/embed.cmake: do not edit. */\n"
  "#include <stddef.h>\n"
  "const unsigned char ${NAME}[] = {\n${bytes}0};\n"
  "const size_t ${NAME}_len = ${len};\n")

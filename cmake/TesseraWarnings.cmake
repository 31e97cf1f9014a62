# tessera_target_defaults(<target>): the warning set (as errors) and include root that
# every Tessera target compiles with.
function(tessera_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wshadow -Wnon-virtual-dtor
                              -Wno-missing-field-initializers>
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror>)
  # GCC 12 reports -Wrestrict inside libstdc++'s std::string at -O3 (GCC bug 105329): a
  # Release build would fail on code that is fine.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
  endif()
  # The CPU kernels silence GCC's -Wmaybe-uninitialized by pragma; clang (the sanitizer and
  # fuzzing build) has no such warning and would make its name an error.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-unknown-warning-option>)
  endif()
  if(TESSERA_HAVE_CUDA)
    target_compile_definitions(${target} PUBLIC TESSERA_HAVE_CUDA=1)
  endif()
endfunction()

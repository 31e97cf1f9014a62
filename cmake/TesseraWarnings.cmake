# tessera_target_defaults(<target>): the warning set (as errors) and include root that
# every Tessera target compiles with.
function(tessera_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wshadow -Wnon-virtual-dtor
                              -Wno-missing-field-initializers>
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror>)
  if(TESSERA_HAVE_CUDA)
    target_compile_definitions(${target} PUBLIC TESSERA_HAVE_CUDA=1)
  endif()
endfunction()

# tests/check_avx512_symbols.cmake: a portable build's AVX-512 objects define no weak symbol that a baseline object may share.
#
# The linker keeps one copy of each weak symbol (inline functions, template instances) for the
# whole program. Were it an AVX-512 copy of something baseline code also calls, a CPU without
# AVX-512 would stop on an illegal instruction. Weak symbols are allowed only in the isa_avx512
# namespace (core/isa.h), whose names no baseline object defines.
# Run as: cmake -DNM=nm -DOBJECTS="a.o;b.o" -P check_avx512_symbols.cmake
set(bad "")
foreach(object ${OBJECTS})
  execute_process(COMMAND ${NM} -C --defined-only ${object} OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} failed on ${object}")
  endif()
  string(REPLACE "\n" ";" lines "${symbols}")
  foreach(line ${lines})
    # "address type name": W, V (weak) and u (unique global) are merged across objects
    if(line MATCHES "^[0-9a-f]+ [WVu] (.*)$")
      set(name "${CMAKE_MATCH_1}")
      if(NOT name MATCHES "::isa_avx512::")
        string(APPEND bad "  ${object}: ${name}\n")
      endif()
    endif()
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "weak symbols outside isa_avx512 in the AVX-512 objects:\n${bad}")
endif()
list(LENGTH OBJECTS count)
message(STATUS "${count} AVX-512 objects: no weak symbol outside isa_avx512")

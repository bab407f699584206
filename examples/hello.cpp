// The same check from C++: the headers are extern "C" and compile as C++11.
#include <cstdio>
#include <string>

#include <mla/mla.h>

int main()
{
    if (mla_version() != MLA_VERSION_NUMBER) {
        std::fprintf(stderr, "header/library version mismatch\n");
        return 1;
    }
    std::string line = std::string("libmla ") + mla_version_string();
    std::printf("%s (C++)\n%s\n", line.c_str(), mla_build_info());
    return 0;
}

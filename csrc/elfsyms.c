/* Symbols of a library's file, local ones included.
 *
 * dlsym finds only what a library exports.  OpenBLAS's thread-count
 * variables (blas_num_threads, blas_cpu_number, blas_server_avail) are
 * exported by some builds (numpy 2.4's wheel) and hidden in others (numpy
 * 2.5's), where the file's .symtab still names them: forked.c needs them to
 * resize a pool a forked child inherited without re-creating its threads.
 * The file is mapped read-only, its section headers checked against its
 * size before use, and unmapped; a stripped file (no .symtab) finds nothing.
 *
 * Layer: helper.  Calls nothing of threadguard's. */
#define _GNU_SOURCE
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "elfsyms.h"

/* The section table entry `index`, or NULL when it lies outside the file. */
static const ElfW(Shdr) *
    section(const unsigned char *file, size_t size, const ElfW(Ehdr) * eh, unsigned index) {
    if (index >= eh->e_shnum || eh->e_shentsize != sizeof(ElfW(Shdr))) return NULL;
    size_t at = (size_t)eh->e_shoff + (size_t)index * sizeof(ElfW(Shdr));
    if (eh->e_shoff == 0 || at + sizeof(ElfW(Shdr)) > size) return NULL;
    return (const ElfW(Shdr) *)(const void *)(file + at);
}

static int inside(const ElfW(Shdr) * s, size_t size) {
    return s->sh_offset <= size && s->sh_size <= size - s->sh_offset;
}

static int lookup(const unsigned char *file, size_t size, struct tg_elf_symbol *symbols,
                  int count) {
    if (size < sizeof(ElfW(Ehdr)) || memcmp(file, ELFMAG, SELFMAG) != 0) return -1;
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)(const void *)file;
    if (eh->e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32)) return -1;
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        const ElfW(Shdr) *symtab = section(file, size, eh, i);
        if (symtab == NULL) return -1;
        if (symtab->sh_type != SHT_SYMTAB) continue;
        const ElfW(Shdr) *strtab = section(file, size, eh, symtab->sh_link);
        if (strtab == NULL || !inside(symtab, size) || !inside(strtab, size) ||
            symtab->sh_entsize != sizeof(ElfW(Sym)))
            return -1;
        const ElfW(Sym) *sym = (const ElfW(Sym) *)(const void *)(file + symtab->sh_offset);
        size_t n = symtab->sh_size / sizeof(ElfW(Sym));
        const char *names = (const char *)file + strtab->sh_offset;
        int found = 0;
        for (size_t k = 0; k < n && found < count; k++) {
            if (sym[k].st_name >= strtab->sh_size || sym[k].st_value == 0 ||
                ELF64_ST_TYPE(sym[k].st_info) != STT_OBJECT)
                continue;
            const char *name = names + sym[k].st_name;
            size_t room = strtab->sh_size - sym[k].st_name;
            for (int j = 0; j < count; j++)
                if (symbols[j].value == 0 && strnlen(name, room) < room &&
                    strcmp(name, symbols[j].name) == 0) {
                    symbols[j].value = sym[k].st_value;
                    symbols[j].size = sym[k].st_size;
                    found++;
                }
        }
        return found;
    }
    return -1; /* stripped */
}

int tg_elf_lookup(const char *path, struct tg_elf_symbol *symbols, int count) {
    for (int j = 0; j < count; j++) symbols[j].value = symbols[j].size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    void *file = MAP_FAILED;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
        file = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (file == MAP_FAILED) return -1;
    int found = lookup(file, (size_t)st.st_size, symbols, count);
    munmap(file, (size_t)st.st_size);
    return found;
}

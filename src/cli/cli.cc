// placeholder
namespace kiln { int cli_main(int, char**) { return 1; } }

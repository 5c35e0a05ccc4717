namespace kiln { int cli_main(int argc, char** argv); }
int main(int argc, char** argv) { return kiln::cli_main(argc, argv); }

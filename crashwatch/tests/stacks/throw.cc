// An exception nobody catches: std::terminate, then abort.
#include <stdexcept>
namespace app {
struct Config {
  [[gnu::noinline]] static int load(int n) {
    if (n < 100) throw std::runtime_error("config missing");
    return n;
  }
};
}  // namespace app
int main(int argc, char **) { return app::Config::load(argc); }

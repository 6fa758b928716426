/* hello: prints one known line and ends the VM. */
#include "runtime.h"

void guest_main(void)
{
    print(REPORT_PREFIX "hello from the capsule test guest\n");
    info("boot-path", "%s", boot_path_name(boot.path));
}
